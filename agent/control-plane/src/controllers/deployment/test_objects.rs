//! Deployments and ReplicaSets for the unit tests, as Kubernetes' `newDeployment` and `rs` helpers.

use testbed_api::objects::{
    Deployment, DeploymentStrategy, IntOrString, ReplicaSet, ReplicaSetStatus, RollingUpdateDeployment,
};

/// A RollingUpdate Deployment of `replicas` with these limits.
pub fn deployment(replicas: i32, max_surge: IntOrString, max_unavailable: IntOrString) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.name = "foo".into();
    d.spec.replicas = Some(replicas);
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(max_surge),
            max_unavailable: Some(max_unavailable),
        }),
    });
    d
}

/// A ReplicaSet of `replicas` with `available` of them available.
pub fn rs(name: &str, replicas: i32, available: i32) -> ReplicaSet {
    let mut rs = ReplicaSet::default();
    rs.metadata.name = name.into();
    rs.spec.replicas = Some(replicas);
    rs.status = Some(ReplicaSetStatus { replicas, available_replicas: Some(available), ..Default::default() });
    rs
}

/// `IntOrString::Int`.
pub fn int(n: i32) -> IntOrString {
    IntOrString::Int(n)
}

/// `IntOrString::String`.
pub fn text(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}
