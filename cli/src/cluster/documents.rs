//! Object documents for `apply -f` / `delete -f`: multi-document YAML (or JSON) files, each object with the
//! file and line it starts on so errors can point at it.

use std::path::Path;

use kube::api::DynamicObject;
use kube::core::TypeMeta;

use super::kinds::{self, Kind};
use super::ClusterError;

/// One object of a file, typed and located.
#[derive(Debug, Clone)]
pub struct Document {
    pub kind: Kind,
    pub object: DynamicObject,
    /// `FILE:LINE` of the document's first line.
    pub at: String,
}

/// Reads every object of `path` (`-`: standard input); empty documents are skipped.
pub fn read(path: &Path) -> Result<Vec<Document>, ClusterError> {
    let text =
        if path == Path::new("-") { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
            .map_err(|e| ClusterError::Document(format!("{}: {e}", path.display())))?;
    parse(path, &text)
}

/// Splits `text` at `---` lines and decodes each part, naming `file:line` in every error.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Document>, ClusterError> {
    let mut docs = Vec::new();
    for (first_line, body) in split(text) {
        let at = |line: usize| format!("{}:{}", file.display(), line);
        let value: serde_json::Value = serde_yaml::from_str(&body).map_err(|e| {
            let line = e.location().map_or(first_line, |l| first_line + l.line() - 1);
            ClusterError::Document(format!("{}: {e}", at(line)))
        })?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value.clone())
            .map_err(|e| ClusterError::Document(format!("{}: not a Kubernetes object: {e}", at(first_line))))?;
        let types: &TypeMeta = object
            .types
            .as_ref()
            .ok_or_else(|| ClusterError::Document(format!("{}: missing `apiVersion` and `kind`", at(first_line))))?;
        let kind = kinds::of_type(types).map_err(|e| ClusterError::Document(format!("{}: {e}", at(first_line))))?;
        if object.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(ClusterError::Document(format!("{}: missing `metadata.name`", at(first_line))));
        }
        docs.push(Document { kind, object, at: at(first_line) });
    }
    Ok(docs)
}

/// (first line number, text) of each `---`-separated document.
fn split(text: &str) -> Vec<(usize, String)> {
    let mut parts = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            parts.push((i + 2, String::new()));
        } else if let Some((_, body)) = parts.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> &'static Path {
        Path::new("objs.yaml")
    }

    #[test]
    fn documents_carry_the_line_they_start_on() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\n---\napiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: l, namespace: a}\n";
        let docs = parse(file(), text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].kind, docs[0].at.as_str()), (Kind::Namespace, "objs.yaml:1"));
        assert_eq!((docs[1].kind, docs[1].at.as_str()), (Kind::Lease, "objs.yaml:8"));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text =
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: [\n";
        let err = parse(file(), text).unwrap_err().to_string();
        assert!(err.starts_with("objs.yaml:"), "{err}");
        let err = parse(file(), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n").unwrap_err();
        assert!(
            err.to_string().starts_with("objs.yaml:1: the server doesn't have a resource type `v1 ConfigMap`"),
            "{err}"
        );
        let err = parse(file(), "---\napiVersion: v1\nkind: Pod\nmetadata: {}\n").unwrap_err().to_string();
        assert_eq!(err, "objs.yaml:2: missing `metadata.name`");
        let err = parse(file(), "metadata: {name: x}\n").unwrap_err().to_string();
        assert!(err.starts_with("objs.yaml:1: "), "{err}");
    }
}
