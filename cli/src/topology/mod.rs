//! Topology file: model, parsing with positions, validation, and the `validate` command.
//! (owner: foundation)
//!
//! Loading goes: serde_yaml into the typed model (syntax, unknown fields, wrong types; positions from
//! serde_yaml), then a position index of the same text (`locate`), then semantic checks (`validate`) whose
//! errors are pinned to the offending key or value. The result is the checked model (`checked`), which the
//! planner (`crate::plan`) turns into a Plan; this module does not know the plan.

pub mod checked;
mod container_images;
mod control_plane;
pub mod locate;
mod manifests;
pub mod model;
mod services;
pub mod validate;
pub mod volumes;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::exit::{CliError, CliResult};
use crate::ui::Ui;

pub use checked::CheckedTopology;
pub use model::Topology;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Topology file (YAML).
    pub file: PathBuf,
}

/// Why a topology file cannot be used. `Invalid` names the place: `file:line:column: field: message`.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Field path such as `nodes.node1.memory`; empty for the whole document.
        field: String,
        message: String,
    },
}

impl TopologyError {
    pub fn invalid(
        file: &Path,
        line: usize,
        column: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        TopologyError::Invalid { file: file.to_path_buf(), line, column, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::Read { file, source } => write!(f, "{}: cannot read the topology: {source}", file.display()),
            TopologyError::Invalid { file, line, column, field, message } if field.is_empty() => {
                write!(f, "{}:{line}:{column}: {message}", file.display())
            }
            TopologyError::Invalid { file, line, column, field, message } => {
                write!(f, "{}:{line}:{column}: {field}: {message}", file.display())
            }
        }
    }
}

/// Reads and checks a topology file (`crate::plan::load` plans it too, which is what `up` and the other
/// commands use).
pub fn load(path: &Path) -> Result<CheckedTopology, TopologyError> {
    let bytes = std::fs::read(path).map_err(|source| TopologyError::Read { file: path.to_path_buf(), source })?;
    check_source(path, &bytes)
}

/// Parses and checks a topology's bytes. `file` only names the source in errors.
pub fn check_source(file: &Path, bytes: &[u8]) -> Result<CheckedTopology, TopologyError> {
    let topology = parse(file, bytes)?;
    let text = String::from_utf8_lossy(bytes);
    let locator = locate::Locator::parse(&text).map_err(|e| {
        let field = e.path.to_string();
        TopologyError::invalid(file, e.pos.line, e.pos.column, field, e.message)
    })?;
    validate::check(&topology, file, bytes, &locator)
}

/// Parses the YAML into the model: syntax, unknown fields, duplicate keys and types. `file` only names the
/// source in errors.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<Topology, TopologyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        TopologyError::invalid(file, line, column, "", "the file is not UTF-8")
    })?;
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, Topology>(de).map_err(|e| {
        // serde_yaml places duplicate keys and extra documents vaguely (at the mapping or the file start); the
        // position index pins them to the offending key or document.
        if let Err(le) = locate::Locator::parse(text) {
            if !le.syntax {
                return TopologyError::invalid(file, le.pos.line, le.pos.column, le.path.to_string(), le.message);
            }
        }
        // serde_path_to_error writes `?` for a segment it could not name (inside a syntax error).
        let field = e.path().to_string();
        let field = field.trim_end_matches(".?").trim_end_matches('?').trim_end_matches('.').to_string();
        let inner = e.inner();
        let message = serde_message(&inner.to_string());
        // For enums tried variant by variant serde_yaml points at the enclosing mapping; the field is better.
        let vague = message.starts_with("expected an image name");
        let (line, column) = match inner.location() {
            Some(l) if !vague => (l.line(), l.column()),
            _ => locate::Locator::parse(text)
                .map(|loc| {
                    let p = loc.locate(&locate::FieldPath::root().join_dotted(&field));
                    (p.line, p.column)
                })
                .unwrap_or((1, 1)),
        };
        TopologyError::invalid(file, line, column, field, message)
    })
}

/// serde_yaml's message without the path prefix and the `at line L column C` suffix we report ourselves,
/// and with serde's wording for untagged enums replaced by what the field accepts.
fn serde_message(raw: &str) -> String {
    let mut msg = strip_position(raw);
    if let Some((head, rest)) = msg.split_once(": ") {
        if !head.contains(char::is_whitespace) {
            msg = rest.to_string();
        }
    }
    if msg.contains("untagged enum ImageDef") {
        return "expected an image name (e.g. debian-12) or {url, sha256}".into();
    }
    msg
}

/// Removes every ` at line L column C` (libyaml and serde_yaml both add one).
fn strip_position(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let n = digits(after);
        match after[n..].strip_prefix(" column ") {
            Some(col) if n > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn cmd_validate(ui: &Ui, args: ValidateArgs) -> CliResult {
    // A checked topology always plans (the checks cover everything the planner assumes), so checking is enough.
    let topology = load(&args.file).map_err(CliError::bad_input)?;
    if ui.is_json() {
        let doc = serde_json::json!({
            "valid": true,
            "file": args.file.display().to_string(),
            "lab": topology.lab,
            "nodes": topology.nodes.len(),
            "networks": topology.networks.len(),
            "pods": topology.pods.len(),
            "tests": topology.tests.len(),
            "backend": topology.cluster.backend,
            "topology_hash": topology.source_sha256,
        });
        println!("{doc}");
    } else {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        println!(
            "ok: {}: lab {}, {} node{}, backend {}, {} declared test{}",
            args.file.display(),
            topology.lab,
            topology.nodes.len(),
            plural(topology.nodes.len()),
            topology.cluster.backend,
            topology.tests.len(),
            plural(topology.tests.len())
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
