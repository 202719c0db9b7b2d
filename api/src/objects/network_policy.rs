//! `networking.k8s.io/v1 NetworkPolicy`: which traffic the pods it selects may receive (`ingress`) and send
//! (`egress`). A pod selected by no policy of a type is open for that type; a selected pod allows the union of
//! what its policies allow. Every node's agent enforces the policies for its own pods
//! (docs/architecture.md, "NetworkPolicy").

use serde::{Deserialize, Serialize};

use super::{IntOrString, LabelSelector, ObjectMeta};

/// `networking.k8s.io/v1 NetworkPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `networking.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `NetworkPolicy`.
    #[serde(default)]
    pub kind: String,
    /// Name (a DNS subdomain), namespace, labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Which pods, which directions, what is allowed.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty selects every pod of the namespace.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Allowed incoming traffic: a connection passes if any rule allows it. None: nothing is allowed in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outgoing traffic, as `ingress`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
    /// `Ingress` and/or `Egress`: the directions the policy restricts. The API server defaults it as
    /// Kubernetes does: `Ingress`, plus `Egress` when egress rules are given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
}

/// One ingress rule: traffic from any of `from` (any source when empty) to any of `ports` (any port when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    /// The destination ports on the selected pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// The sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
}

/// One egress rule: traffic to any of `to` (any destination when empty) on any of `ports` (any when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    /// The destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// The destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
}

/// A source or destination: pods (by their labels and their namespace's labels) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods with these labels: in the policy's namespace, or in the namespaces `namespaceSelector` picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Every pod of the namespaces with these labels (or those of them `podSelector` picks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses; alone (not with the selectors).
    #[serde(default, rename = "ipBlock", skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`: a CIDR less some CIDRs inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    /// `10.0.0.0/8`.
    #[serde(default)]
    pub cidr: String,
    /// CIDRs inside `cidr` that are not part of the block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A port (or a range of ports) and its protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number, or the name of a container port of the destination pod; none: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// With a numeric `port`: the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

/// `Ingress` in `policyTypes`.
pub const POLICY_TYPE_INGRESS: &str = "Ingress";
/// `Egress` in `policyTypes`.
pub const POLICY_TYPE_EGRESS: &str = "Egress";

impl NetworkPolicySpec {
    /// Whether the policy restricts `kind` (`Ingress`/`Egress`), with Kubernetes' default when
    /// `policyTypes` is empty (the API server writes it; a client's object may lack it).
    pub fn restricts(&self, kind: &str) -> bool {
        if self.policy_types.is_empty() {
            return kind == POLICY_TYPE_INGRESS || (kind == POLICY_TYPE_EGRESS && !self.egress.is_empty());
        }
        self.policy_types.iter().any(|t| t == kind)
    }

    /// Kubernetes' defaulting of `policyTypes` (`SetDefaults_NetworkPolicy`).
    pub fn default_policy_types(&mut self) {
        if self.policy_types.is_empty() {
            self.policy_types.push(POLICY_TYPE_INGRESS.to_string());
            if !self.egress.is_empty() {
                self.policy_types.push(POLICY_TYPE_EGRESS.to_string());
            }
        }
    }
}
