//! The kinds a lab's API server serves, by the names and short names kubectl accepts (`pods`, `pod`, `po`),
//! and how a command's `KIND[/NAME]` arguments name them.

use kube::api::ApiResource;
use kube::core::{GroupVersionKind, TypeMeta};

/// A kind the CLI knows how to show and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Lease,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Namespace, Kind::Node, Kind::Pod, Kind::Lease];

    /// (group, version, kind, plural, short names)
    fn names(self) -> (&'static str, &'static str, &'static str, &'static str, &'static [&'static str]) {
        match self {
            Kind::Namespace => ("", "v1", "Namespace", "namespaces", &["ns"]),
            Kind::Node => ("", "v1", "Node", "nodes", &["no"]),
            Kind::Pod => ("", "v1", "Pod", "pods", &["po"]),
            Kind::Lease => ("coordination.k8s.io", "v1", "Lease", "leases", &[]),
        }
    }

    pub fn kind(self) -> &'static str {
        self.names().2
    }

    pub fn plural(self) -> &'static str {
        self.names().3
    }

    /// `pod`, as kubectl prints in `pod/web created`.
    pub fn singular(self) -> String {
        self.kind().to_lowercase()
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::Lease)
    }

    pub fn api_version(self) -> String {
        let (group, version, ..) = self.names();
        if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural, _) = self.names();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    /// The kind a command-line name means: plural, singular, short name or Kind, any case.
    pub fn parse(name: &str) -> Result<Kind, UnknownKind> {
        let lower = name.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| {
                let (_, _, kind, plural, short) = k.names();
                lower == plural || lower == kind.to_ascii_lowercase() || short.contains(&lower.as_str())
            })
            .ok_or_else(|| UnknownKind(name.to_string()))
    }

    /// The kind a document's `apiVersion` and `kind` name, exactly as the API spells them.
    pub fn of_type(types: &TypeMeta) -> Result<Kind, UnknownKind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.kind() == types.kind && k.api_version() == types.api_version)
            .ok_or_else(|| UnknownKind(format!("{} {}", types.api_version, types.kind)))
    }
}

/// A kind this control plane does not serve.
#[derive(Debug, thiserror::Error)]
#[error("the server doesn't have a resource type `{0}` (served: {served})", served = served())]
pub struct UnknownKind(pub String);

fn served() -> String {
    Kind::ALL.iter().map(|k| format!("{} ({})", k.plural(), k.api_version())).collect::<Vec<_>>().join(", ")
}

/// What `get`/`delete`/`describe` were asked for: `pods`, `pods,nodes`, `pod/web`, or `pod web db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    /// Empty: every object of the kind.
    pub names: Vec<String>,
}

/// Reads kubectl-style arguments: either `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`.
pub fn targets(args: &[String]) -> Result<Vec<Target>, UnknownKind> {
    let Some(first) = args.first() else { return Ok(Vec::new()) };
    if first.contains('/') {
        let mut out: Vec<Target> = Vec::new();
        for arg in args {
            let (kind, name) = arg.split_once('/').ok_or_else(|| UnknownKind(arg.clone()))?;
            let kind = Kind::parse(kind)?;
            match out.iter_mut().find(|t| t.kind == kind) {
                Some(t) => t.names.push(name.to_string()),
                None => out.push(Target { kind, names: vec![name.to_string()] }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    first.split(',').map(|k| Ok(Target { kind: Kind::parse(k)?, names: names.clone() })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_short_names_and_kinds_all_parse() {
        for name in ["pods", "pod", "po", "Pod", "PODS"] {
            assert_eq!(Kind::parse(name).unwrap(), Kind::Pod, "{name}");
        }
        assert_eq!(Kind::parse("ns").unwrap(), Kind::Namespace);
        assert_eq!(Kind::parse("no").unwrap(), Kind::Node);
        assert_eq!(Kind::parse("leases").unwrap(), Kind::Lease);
        let err = Kind::parse("deployments").unwrap_err().to_string();
        assert!(err.contains("`deployments`") && err.contains("leases (coordination.k8s.io/v1)"), "{err}");
    }

    #[test]
    fn arguments_read_as_kubectl_reads_them() {
        let t = targets(&strings(&["pods,nodes"])).unwrap();
        assert_eq!(t, vec![Target { kind: Kind::Pod, names: vec![] }, Target { kind: Kind::Node, names: vec![] }]);
        let t = targets(&strings(&["pod", "a", "b"])).unwrap();
        assert_eq!(t, vec![Target { kind: Kind::Pod, names: strings(&["a", "b"]) }]);
        let t = targets(&strings(&["pod/a", "node/n1", "po/b"])).unwrap();
        assert_eq!(
            t,
            vec![
                Target { kind: Kind::Pod, names: strings(&["a", "b"]) },
                Target { kind: Kind::Node, names: strings(&["n1"]) }
            ]
        );
        assert!(targets(&strings(&["pod/a", "b"])).is_err());
    }

    #[test]
    fn documents_name_their_kind_by_api_version_and_kind() {
        let types = |v: &str, k: &str| TypeMeta { api_version: v.into(), kind: k.into() };
        assert_eq!(Kind::of_type(&types("coordination.k8s.io/v1", "Lease")).unwrap(), Kind::Lease);
        assert_eq!(Kind::of_type(&types("v1", "Pod")).unwrap(), Kind::Pod);
        assert!(Kind::of_type(&types("apps/v1", "Pod")).is_err());
        assert_eq!(Kind::Lease.api_resource().plural, "leases");
    }
}
