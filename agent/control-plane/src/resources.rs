//! The resources the server serves: their REST names, API group and version, scope, and etcd keys.

/// The object kinds the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `v1 Namespace`.
    Namespace,
    /// `v1 Node`.
    Node,
    /// `v1 Pod`.
    Pod,
    /// `coordination.k8s.io/v1 Lease`.
    Lease,
    /// `v1 Event`.
    Event,
    /// `apps/v1 ReplicaSet`.
    ReplicaSet,
    /// `apps/v1 Deployment`.
    Deployment,
    /// `v1 Service`.
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice,
    /// `networking.k8s.io/v1 NetworkPolicy`.
    NetworkPolicy,
}

/// One REST resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// The kind of its objects.
    pub kind: Kind,
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// The path segment: `pods`.
    pub plural: &'static str,
    /// `pod`, for discovery.
    pub singular: &'static str,
    /// `Pod`.
    pub kind_name: &'static str,
    /// Objects live in a namespace.
    pub namespaced: bool,
    /// kubectl's short names (`po`).
    pub short_names: &'static [&'static str],
    /// Has a `status` written through the `/status` subresource (a PUT of the object keeps the old status).
    pub has_status: bool,
}

/// Everything served, in discovery order.
pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: Kind::Namespace,
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind_name: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        has_status: true,
    },
    Resource {
        kind: Kind::Node,
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind_name: "Node",
        namespaced: false,
        short_names: &["no"],
        has_status: true,
    },
    Resource {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind_name: "Pod",
        namespaced: true,
        short_names: &["po"],
        has_status: true,
    },
    Resource {
        kind: Kind::Lease,
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind_name: "Lease",
        namespaced: true,
        short_names: &[],
        has_status: false,
    },
    Resource {
        kind: Kind::Event,
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind_name: "Event",
        namespaced: true,
        short_names: &["ev"],
        has_status: false,
    },
    Resource {
        kind: Kind::ReplicaSet,
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind_name: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        has_status: true,
    },
    Resource {
        kind: Kind::Deployment,
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind_name: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        has_status: true,
    },
    Resource {
        kind: Kind::Service,
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind_name: "Service",
        namespaced: true,
        short_names: &["svc"],
        // Kubernetes' Service status holds load balancers only, which testbed does not make.
        has_status: false,
    },
    Resource {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind_name: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        has_status: false,
    },
    Resource {
        kind: Kind::NetworkPolicy,
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        singular: "networkpolicy",
        kind_name: "NetworkPolicy",
        namespaced: true,
        short_names: &["netpol"],
        // Kubernetes removed NetworkPolicy's status (it never carried anything).
        has_status: false,
    },
];

/// Namespaces that exist from the start, as in Kubernetes.
pub const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-node-lease"];

/// Every key lives under this prefix, as in Kubernetes, so the etcd can hold other data beside it.
pub const KEY_PREFIX: &str = "/registry/";

impl Resource {
    /// The resource `plural` of `group`/`version`.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// `v1` or `coordination.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The etcd prefix of the objects in `namespace` (all namespaces for `None`), ending in '/' so that
    /// namespace `a` does not see namespace `ab`.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{KEY_PREFIX}{}/{ns}/", self.plural),
            _ => format!("{KEY_PREFIX}{}/", self.plural),
        }
    }

    /// The etcd key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_served_once() {
        let kinds = [
            Kind::Namespace,
            Kind::Node,
            Kind::Pod,
            Kind::Lease,
            Kind::Event,
            Kind::ReplicaSet,
            Kind::Deployment,
            Kind::Service,
            Kind::EndpointSlice,
            Kind::NetworkPolicy,
        ];
        for kind in kinds {
            assert_eq!(RESOURCES.iter().filter(|r| r.kind == kind).count(), 1, "{kind:?}");
        }
        assert_eq!(RESOURCES.len(), kinds.len());
    }
}
