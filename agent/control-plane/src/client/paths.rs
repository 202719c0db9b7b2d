//! REST paths of the served kinds, as the API server routes them (`resources.rs`), and query strings.

use crate::resources::{Kind, Resource, RESOURCES};

/// Pods of a namespace, or of every namespace.
pub fn pods(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/api/v1/namespaces/{ns}/pods"),
        None => "/api/v1/pods".into(),
    }
}

/// One pod.
pub fn pod(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// Every node.
pub fn nodes() -> String {
    "/api/v1/nodes".into()
}

/// One node.
pub fn node(name: &str) -> String {
    format!("/api/v1/nodes/{name}")
}

/// Leases of a namespace.
pub fn leases(namespace: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
}

/// One lease.
pub fn lease(namespace: &str, name: &str) -> String {
    format!("{}/{name}", leases(namespace))
}

/// The collection of any served kind in `namespace` (every namespace for `None`, and for cluster-scoped
/// kinds): `/apis/apps/v1/namespaces/default/deployments`.
pub fn collection(kind: Kind, namespace: Option<&str>) -> String {
    let res = resource(kind);
    let base =
        if res.group.is_empty() { "/api/v1".to_string() } else { format!("/apis/{}/{}", res.group, res.version) };
    match namespace {
        Some(ns) if res.namespaced => format!("{base}/namespaces/{ns}/{}", res.plural),
        _ => format!("{base}/{}", res.plural),
    }
}

/// One object of any served kind (`namespace` is ignored for cluster-scoped kinds).
pub fn object(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{}/{name}", collection(kind, Some(namespace)))
}

fn resource(kind: Kind) -> &'static Resource {
    // Every Kind has exactly one entry in RESOURCES (resources.rs tests it).
    RESOURCES.iter().find(|r| r.kind == kind).unwrap_or(&RESOURCES[0])
}

/// `path?k=v&...` with the values percent-encoded (`spec.nodeName=n1` is a value holding `=`).
pub fn with_query(path: &str, query: &[(&str, &str)]) -> String {
    if query.is_empty() {
        return path.to_string();
    }
    let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    format!("{path}?{}", pairs.join("&"))
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        assert_eq!(with_query("/api/v1/pods", &[]), "/api/v1/pods");
        assert_eq!(
            with_query("/api/v1/pods", &[("fieldSelector", "spec.nodeName=n 1"), ("watch", "true")]),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn%201&watch=true"
        );
        assert_eq!(collection(Kind::Deployment, Some("a")), "/apis/apps/v1/namespaces/a/deployments");
        assert_eq!(collection(Kind::Event, None), "/api/v1/events");
        assert_eq!(object(Kind::Node, "ignored", "n1"), nodes() + "/n1");
        assert_eq!(object(Kind::Lease, "kube-node-lease", "n1"), lease("kube-node-lease", "n1"));
        assert_eq!(
            super::lease("kube-node-lease", "n1"),
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
        );
    }
}
