//! Objects of the cluster control plane in the Kubernetes wire format (JSON field names, `apiVersion`/`kind`,
//! `metadata`, `spec`, `status`): Namespace, Node, Pod, Event, Lease (`coordination.k8s.io/v1`), ReplicaSet
//! and Deployment (`apps/v1`) with their `Scale`, Service and EndpointSlice (`discovery.k8s.io/v1`),
//! NetworkPolicy (`networking.k8s.io/v1`), the
//! `Status` every error answer carries, and the `Binding` the scheduler posts.
//!
//! They are a subset of the Kubernetes schemas: the fields testbed acts on. Standard clients (kubectl, kube-rs
//! with k8s-openapi) read and write them unchanged; a field outside the subset is refused when the client asks
//! for strict field validation (kubectl does by default) and dropped with a warning otherwise, as the
//! Kubernetes API server does. Own types rather than k8s-openapi's keep the static agent, which serves them,
//! small (docs/architecture.md has the measurements).

mod apps;
mod binding;
mod cluster;
mod coordination;
mod event;
mod meta;
mod network_policy;
mod pod;
mod service;
mod status;

pub use apps::*;
pub use binding::*;
pub use cluster::*;
pub use coordination::*;
pub use event::*;
pub use meta::*;
pub use network_policy::*;
pub use pod::*;
pub use service::*;
pub use status::*;
