//! The kinds a lab's API server serves, by the names and short names kubectl accepts (`pods`, `pod`, `po`),
//! and how a command's `KIND[/NAME]` arguments name them.

use kube::api::ApiResource;
use kube::core::{GroupVersionKind, TypeMeta};
pub use testbed_control_plane::resources::Kind;
use testbed_control_plane::resources::{Resource, RESOURCES};

/// What the CLI needs of a kind, read from the server's own table of what it serves (`RESOURCES`), so a kind
/// the server adds is one entry there, not a second list here.
pub trait Served: Copy {
    fn resource(self) -> &'static Resource;

    /// `Pod`.
    fn kind(self) -> &'static str {
        self.resource().kind_name
    }

    fn plural(self) -> &'static str {
        self.resource().plural
    }

    /// `pod`, as kubectl prints in `pod/web created`.
    fn singular(self) -> &'static str {
        self.resource().singular
    }

    /// `deployment.apps`, `pod`: how kubectl names the kind in `deployment.apps/web scaled`.
    fn qualified(self) -> String {
        let r = self.resource();
        match r.group {
            "" => r.singular.to_string(),
            group => format!("{}.{group}", r.singular),
        }
    }

    fn namespaced(self) -> bool {
        self.resource().namespaced
    }

    fn api_resource(self) -> ApiResource {
        let r = self.resource();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(r.group, r.version, r.kind_name), r.plural)
    }
}

impl Served for Kind {
    fn resource(self) -> &'static Resource {
        RESOURCES.iter().find(|r| r.kind == self).expect("RESOURCES has an entry for every Kind")
    }
}

/// The kind a command-line name means: plural, singular, short name or Kind, any case.
pub fn parse(name: &str) -> Result<Kind, UnknownKind> {
    let lower = name.to_ascii_lowercase();
    RESOURCES
        .iter()
        .find(|r| lower == r.plural || lower == r.singular || r.short_names.contains(&lower.as_str()))
        .map(|r| r.kind)
        .ok_or_else(|| UnknownKind(name.to_string()))
}

/// The kind a document's `apiVersion` and `kind` name, exactly as the API spells them.
pub fn of_type(types: &TypeMeta) -> Result<Kind, UnknownKind> {
    RESOURCES
        .iter()
        .find(|r| r.kind_name == types.kind && r.api_version() == types.api_version)
        .map(|r| r.kind)
        .ok_or_else(|| UnknownKind(format!("{} {}", types.api_version, types.kind)))
}

/// A kind this control plane does not serve.
#[derive(Debug, thiserror::Error)]
#[error("the server doesn't have a resource type `{0}` (served: {served})", served = served())]
pub struct UnknownKind(pub String);

fn served() -> String {
    RESOURCES.iter().map(|r| format!("{} ({})", r.plural, r.api_version())).collect::<Vec<_>>().join(", ")
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
            let kind = parse(kind)?;
            match out.iter_mut().find(|t| t.kind == kind) {
                Some(t) => t.names.push(name.to_string()),
                None => out.push(Target { kind, names: vec![name.to_string()] }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    first.split(',').map(|k| Ok(Target { kind: parse(k)?, names: names.clone() })).collect()
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
            assert_eq!(parse(name).unwrap(), Kind::Pod, "{name}");
        }
        assert_eq!(parse("ns").unwrap(), Kind::Namespace);
        assert_eq!(parse("no").unwrap(), Kind::Node);
        assert_eq!(parse("leases").unwrap(), Kind::Lease);
        assert_eq!(parse("deploy").unwrap(), Kind::Deployment);
        assert_eq!(parse("svc").unwrap(), Kind::Service);
        assert_eq!(parse("endpointslices").unwrap(), Kind::EndpointSlice);
        assert_eq!(parse("netpol").unwrap(), Kind::NetworkPolicy);
        assert_eq!(parse("networkpolicies").unwrap(), Kind::NetworkPolicy);
        let err = parse("configmaps").unwrap_err().to_string();
        assert!(err.contains("`configmaps`") && err.contains("leases (coordination.k8s.io/v1)"), "{err}");
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
        assert_eq!(of_type(&types("coordination.k8s.io/v1", "Lease")).unwrap(), Kind::Lease);
        assert_eq!(of_type(&types("v1", "Pod")).unwrap(), Kind::Pod);
        assert!(of_type(&types("apps/v1", "Pod")).is_err());
        assert_eq!(Kind::Lease.api_resource().plural, "leases");
        assert_eq!(Kind::Deployment.qualified(), "deployment.apps");
        assert_eq!(Kind::Pod.qualified(), "pod");
    }
}
